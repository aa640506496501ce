"""Loss families: one ``torch.autograd.Function`` per loss, grouped by family."""
