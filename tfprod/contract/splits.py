"""The split names every ExampleGen writes and every later step reads."""

TRAIN = "train"  # what the model is fitted on
EVAL = "eval"  # model selection, early stopping and the Evaluator's blessing
TEST = "test"  # held out: reported, never used to choose anything

SPLITS = (TRAIN, EVAL, TEST)
