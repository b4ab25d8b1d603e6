"""Reports: markdown report cards and matplotlib plots of a run."""
