"""The torch backend: checked IR to generated PyTorch source, loaded or written to disk."""
