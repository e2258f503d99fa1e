"""The error a row raises when it cannot become a training example."""

from dataclasses import dataclass


@dataclass
class RowError(Exception):
    """A row that cannot become an example; `row` counts from 1 in the order rows were uploaded."""

    row: int
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"
