"""Git Re-Basin (Ainsworth, Hayase, Srinivasa, ICLR 2023)."""

from .lap import AssignmentDuals, linear_sum_assignment

__all__ = ["AssignmentDuals", "linear_sum_assignment"]
