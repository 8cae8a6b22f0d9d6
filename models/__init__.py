"""Keras model builders and the registry that names them."""
