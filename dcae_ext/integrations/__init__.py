"""Our fused ops inside other libraries' models, one module per library, each imported only when used:

    from dcae_ext.integrations.diffusers import accelerate, restore   # needs `pip install dcae-ext[diffusers]`

Importing this package (or dcae_ext) imports none of those libraries.
"""
