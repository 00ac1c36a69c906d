"""alibi-lm: ALiBi (Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022) as a Transformers model.

Importing the package registers `AlibiConfig`, `AlibiModel`, `AlibiForCausalLM` and the sequence-classification,
token-classification and question-answering heads with `AutoConfig` and the matching `AutoModel*` classes, and
`AlibiTokenizerFast` with `AutoTokenizer`, so a checkpoint with `model_type: "alibi"` and its tokenizer load without
`trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from .modeling.alibi_masks import get_alibi_slopes
from .modeling.configuration_alibi import AlibiConfig, AlibiTokenizerFast
from .modeling.modeling_alibi import (
    AlibiForCausalLM,
    AlibiForQuestionAnswering,
    AlibiForSequenceClassification,
    AlibiForTokenClassification,
    AlibiModel,
    AlibiPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(AlibiConfig.model_type, AlibiConfig, exist_ok=True)
AutoModel.register(AlibiConfig, AlibiModel, exist_ok=True)
AutoModelForCausalLM.register(AlibiConfig, AlibiForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(AlibiConfig, AlibiForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(AlibiConfig, AlibiForTokenClassification, exist_ok=True)
AutoModelForQuestionAnswering.register(AlibiConfig, AlibiForQuestionAnswering, exist_ok=True)
# A tokenizer loaded through the remote code and saved again names AlibiTokenizerFast; this finds it locally.
AutoTokenizer.register(AlibiConfig, fast_tokenizer_class=AlibiTokenizerFast, exist_ok=True)

__all__ = [
    "AlibiConfig",
    "AlibiForCausalLM",
    "AlibiForQuestionAnswering",
    "AlibiForSequenceClassification",
    "AlibiForTokenClassification",
    "AlibiModel",
    "AlibiPreTrainedModel",
    "AlibiTokenizerFast",
    "get_alibi_slopes",
    "__version__",
]
