"""Dispatch: the broker, the task entry points and the reaper."""
