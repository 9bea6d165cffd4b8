"""Tasks: problems, prompt formats, answer extraction and automatic verifiers, registered by name."""

from deliberate.tasks.base import TASKS, Task, get_task, register_task, task_names

__all__ = ["TASKS", "Task", "get_task", "register_task", "task_names"]
