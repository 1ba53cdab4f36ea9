"""Point-in-time restore: targets, the plan (what a dry run prints), and the confirmed restore."""
