"""Tasks: problems, prompt formats, answer extraction and automatic verifiers, registered by name."""

from deliberate.tasks.base import Task, get_task, register_task, task_names

__all__ = ["Task", "get_task", "register_task", "task_names"]
