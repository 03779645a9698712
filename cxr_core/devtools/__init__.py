"""Developer tools: the PR report, the leaderboard and the known-answer run (not the user app)."""
