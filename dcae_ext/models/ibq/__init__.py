"""The IBQ tokenizer: the quantizer, the VQGAN backbone of the paper's tokenizers, the tokenizer."""
from dcae_ext.models.ibq.quantizer import IBQuantizer, QuantizerOutput
from dcae_ext.models.ibq.tokenizer import IBQConfig, IBQTokenizer

__all__ = ["IBQConfig", "IBQTokenizer", "IBQuantizer", "QuantizerOutput"]
