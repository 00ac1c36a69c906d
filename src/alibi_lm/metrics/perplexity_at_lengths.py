"""`evaluate` metric: perplexity of a causal LM at several evaluation lengths (ALiBi's extrapolation test).

Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. The numbers come from `alibi_lm.evaluation.perplexity_at_lengths`, the same
function the CLI and the Trainer callback call. Load it offline by path (the Hub's "perplexity" needs the
network):

    import evaluate
    from alibi_lm.evaluation import perplexity_metric_path

    metric = evaluate.load(perplexity_metric_path())
    metric.compute(predictions=texts, model_id="path/to/model", lengths=[64, 128, 256])
"""

import datasets
import evaluate

from alibi_lm.machine import default_device
from alibi_lm.scoring import load_model_and_tokenizer, perplexity_at_lengths

_CITATION = """\
@inproceedings{press2022train,
  title={Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation},
  author={Ofir Press and Noah A. Smith and Mike Lewis},
  booktitle={International Conference on Learning Representations},
  year={2022},
  url={https://openreview.net/forum?id=R8sQPpGCv0}
}
"""

_DESCRIPTION = """\
Token-weighted perplexity of a causal language model on a text at each of several evaluation lengths, in
the paper's two modes: non-overlapping chunks of length L, or sliding windows of length L that each score
their last `stride` tokens. The texts are joined (EOS between them) into one stream, as the paper scores
WikiText-103's test set. Every length is scored inside the same span of the stream: its first
floor(N / max(lengths)) * max(lengths) tokens. A stream shorter than the longest length raises ValueError.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the texts to score.
    model_id (str or PreTrainedModel): a folder written by save_pretrained (model and tokenizer), or a
        loaded model (then pass `tokenizer`).
    lengths (list of int): evaluation lengths, each >= 2.
    tokenizer (str or tokenizer, optional): overrides the tokenizer found in `model_id`'s folder.
    mode (str): "nonoverlapping" (default) or "sliding".
    stride (int, optional): sliding mode only, 1 <= stride <= every length.
    batch_size (int, optional): windows per forward (default 8192 // length).
    device (str, optional): default the model's device (cuda if available when loading from a folder).
    max_tokens (int, optional): use at most this many tokens of the stream.
Returns:
    lengths (list of int): the evaluation lengths, sorted.
    perplexities (list of float): perplexity at each length.
    nll (list of float): mean negative log-likelihood per scored token (nats) at each length.
    n_tokens (list of int): tokens scored at each length.
Examples:
    >>> metric = evaluate.load(perplexity_metric_path())
    >>> out = metric.compute(predictions=texts, model_id="runs/alibi", lengths=[64, 128])
    >>> out["perplexities"]
    [31.2, 30.8]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PerplexityAtLengths(evaluate.Metric):
    """Perplexity at several evaluation lengths, non-overlapping or sliding window."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2108.12409"],
        )

    def _compute(
        self,
        predictions,
        model_id,
        lengths,
        tokenizer=None,
        mode="nonoverlapping",
        stride=None,
        batch_size=None,
        device=None,
        max_tokens=None,
    ):
        if isinstance(model_id, str):
            device = device or default_device()
            model, folder_tokenizer = load_model_and_tokenizer(model_id, device)
            tokenizer = tokenizer or folder_tokenizer
            name = model_id
        else:
            model, name = model_id, None
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if tokenizer is None:
            raise ValueError("a loaded model needs `tokenizer=` (a tokenizer or a folder holding one)")
        result = perplexity_at_lengths(
            model,
            texts=list(predictions),
            tokenizer=tokenizer,
            lengths=lengths,
            mode=mode,
            stride=stride,
            batch_size=batch_size,
            device=device,
            max_tokens=max_tokens,
            model_name=name,
            progress=False,
        )
        return {
            "lengths": [r.length for r in result.lengths],
            "perplexities": [r.ppl for r in result.lengths],
            "nll": [r.nll for r in result.lengths],
            "n_tokens": [r.n_tokens for r in result.lengths],
        }
