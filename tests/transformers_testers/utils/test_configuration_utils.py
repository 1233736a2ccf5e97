"""Stand-in for transformers' ``tests/utils/test_configuration_utils.py`` (not in the 5.24.0 sdist; written for
hf_recperc).

``ConfigTester.check_config_arguments_init`` builds a configuration from ``config_common_kwargs`` and checks that
every value is kept. Ours lists a non-default value for each field ``PreTrainedConfig`` declares in
transformers 5.24 (``dtype`` is compared as ``torch.float16`` by the tester, so it must be ``"float16"``).
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
