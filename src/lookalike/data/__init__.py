"""Where images come from: the three input forms (datasets), robust decoding (images), the
generated labelled collections used by the demo and the tests (synthetic), and tiny-ImageNet
download (fetch)."""
