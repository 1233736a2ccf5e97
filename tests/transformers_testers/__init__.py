"""transformers' own model and configuration test mixins, vendored (see NOTICE.md): not hf_recperc's code."""
