"""Runners turn a job's step into images. The pipeline lives in a child process."""
