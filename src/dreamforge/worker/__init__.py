"""The worker side: claiming jobs and walking them through their steps."""
