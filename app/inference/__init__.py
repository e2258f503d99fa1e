"""Using a trained adapter: generate, predict, evaluations and exports, and the reaper for dead calls."""
