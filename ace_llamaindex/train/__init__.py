"""Training: full fine-tune, query adapter, method selection, the validation split and promotion gate, exports."""
