"""TensorFlow Datasets as a pipeline source: dataset checks, an ExampleGen, a local builder."""
