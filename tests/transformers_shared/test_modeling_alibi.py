# Copyright 2026 The alibi-lm authors. Licensed under the Apache License, Version 2.0.
"""transformers' shared model tests for the ALiBi causal LM, in the shape of its Llama test.

This module does not run from this repository: `assemble.py` copies it into a harness built from
transformers' own test files, as `tests/models/alibi/test_modeling_alibi.py`, where the relative import
below resolves to transformers' `tests/causal_lm_tester.py` (see `tests/transformers_shared/conftest.py`).
Run it with `python tests/transformers_shared/assemble.py --run`.

It differs from `tests/models/llama/test_modeling_llama.py` in one respect, because our classes live
outside transformers: some shared tests pick what to do by looking a class's *name* up in transformers'
auto-mapping tables (`MODEL_MAPPING_NAMES`, `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`). A built-in causal LM is
in those tables; `AutoModel.register` does not add to them. Without an entry, `test_training*` neither skip
the base model nor give the LM head `labels` (so they fail on `loss` being None), and
`test_inputs_embeds_matches_input_ids` and `test_causal_lm_loss_honors_shift_labels` silently check
nothing. `AlibiModelTest.setUp` therefore adds our names (the heads too) to those tables for the duration of each test,
which is exactly the treatment Llama gets; no test is skipped or weakened by this module.

One test is adapted, not skipped: `test_sdpa_can_dispatch_non_composite_models` asserts that a model loaded with no
`attn_implementation` runs "sdpa". Ours runs `alibi_fused`, registered with transformers' AttentionInterface (flex
for multi-token forwards on a GPU, sdpa otherwise), so that the name in the config is the kernel that runs. The
override asserts that, and everything else the shared test asserts: `attn_implementation="sdpa"` loads sdpa, and
`attn_implementation="eager"` leaves no attention layer on sdpa.
"""

import tempfile
import unittest
from unittest import mock

from transformers import is_torch_available
from transformers.models.auto import modeling_auto
from transformers.testing_utils import require_torch, torch_device

from ...causal_lm_tester import CausalLMModelTest, CausalLMModelTester

if is_torch_available():
    from alibi_lm import (
        AlibiConfig,
        AlibiForCausalLM,
        AlibiForQuestionAnswering,
        AlibiForSequenceClassification,
        AlibiForTokenClassification,
        AlibiModel,
    )


class AlibiModelTester(CausalLMModelTester):
    if is_torch_available():
        base_model_class = AlibiModel
        # Inference by name looks in transformers' namespace, where our classes are not.
        config_class = AlibiConfig
        causal_lm_class = AlibiForCausalLM
        sequence_classification_class = AlibiForSequenceClassification
        token_classification_class = AlibiForTokenClassification
        question_answering_class = AlibiForQuestionAnswering

    def __init__(self, parent, **kwargs):
        # A tiny config; the rest (batch 13, seq 7, pad/bos/eos 0/1/2, ...) is the shared tester default.
        kwargs.setdefault("vocab_size", 99)
        kwargs.setdefault("hidden_size", 32)
        kwargs.setdefault("num_hidden_layers", 2)
        kwargs.setdefault("num_attention_heads", 4)
        kwargs.setdefault("num_key_value_heads", 4)
        kwargs.setdefault("intermediate_size", 37)
        super().__init__(parent, **kwargs)


@require_torch
class AlibiModelTest(CausalLMModelTest, unittest.TestCase):
    model_tester_class = AlibiModelTester
    all_model_classes = (
        (
            AlibiModel,
            AlibiForCausalLM,
            AlibiForSequenceClassification,
            AlibiForTokenClassification,
            AlibiForQuestionAnswering,
        )
        if is_torch_available()
        else ()
    )
    pipeline_model_mapping = (
        {
            "feature-extraction": AlibiModel,
            "text-generation": AlibiForCausalLM,
            "text-classification": AlibiForSequenceClassification,
            "zero-shot": AlibiForSequenceClassification,
            "token-classification": AlibiForTokenClassification,
            "question-answering": AlibiForQuestionAnswering,
        }
        if is_torch_available()
        else {}
    )

    # As in Llama's test: `test_cpu_offload` needs 0.8 instead of 0.9.
    model_split_percents = (0.5, 0.7, 0.8)

    # used in `test_torch_compile_for_training`
    _torch_compile_train_cls = AlibiForCausalLM if is_torch_available() else None

    def test_sdpa_can_dispatch_non_composite_models(self):
        for model_class in self.all_model_classes:
            config, _ = self.model_tester.prepare_config_and_inputs_for_common()
            model = model_class(config)
            with tempfile.TemporaryDirectory() as tmpdirname:
                model.save_pretrained(tmpdirname)
                default = model_class.from_pretrained(tmpdirname).eval().to(torch_device)
                self.assertEqual(default.config._attn_implementation, "alibi_fused")
                model_sdpa = model_class.from_pretrained(tmpdirname, attn_implementation="sdpa").eval()
                self.assertEqual(model_sdpa.config._attn_implementation, "sdpa")
                model_eager = model_class.from_pretrained(tmpdirname, attn_implementation="eager").eval()
                self.assertEqual(model_eager.config._attn_implementation, "eager")
                for name, submodule in model_eager.named_modules():
                    if submodule.__class__.__name__.endswith("Attention") and getattr(submodule, "config", None):
                        self.assertNotEqual(submodule.config._attn_implementation, "sdpa", name)

    def setUp(self):
        super().setUp()
        model_type = AlibiConfig.model_type
        for table, model_class in (
            (modeling_auto.MODEL_MAPPING_NAMES, AlibiModel),
            (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, AlibiForCausalLM),
            (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, AlibiForSequenceClassification),
            (modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, AlibiForTokenClassification),
            (modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES, AlibiForQuestionAnswering),
        ):
            self.enterContext(mock.patch.dict(table, {model_type: model_class.__name__}))
