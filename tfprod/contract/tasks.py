"""The names of the ML problems tfprod solves. Models register for these (tfprod.models.registry)
and each has one Task in tfprod.pipeline.tasks."""

import enum


class TaskName(str, enum.Enum):
    """A kind of ML problem. The value is what configs, run summaries and the registry show."""

    IMAGE_CLASSIFICATION = "image_classification"
    TEXT_CLASSIFICATION = "text_classification"
    FORECASTING = "forecasting"
    # A CSV table: classification or regression of one column from the others
    # (data.table.problem says which; both are one task, as the data decides).
    TABLE = "table"

    def __str__(self) -> str:
        return self.value
