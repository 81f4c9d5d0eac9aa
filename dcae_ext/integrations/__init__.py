"""Optional integrations with other libraries. Each submodule imports its library only when one of
its functions is called; `import dcae_ext.integrations` imports none of them.

    from dcae_ext.integrations.diffusers import accelerate, restore   # pip install dcae-ext[diffusers]
"""
