"""jaxnorm: measure why deep Transformers' gradients vanish or explode, and which remedies work."""
