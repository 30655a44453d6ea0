"""MAP@10, Precision@5 and a CSV reporter for ace-llamaindex."""
