"""Developer tools outside the runtime packages: the process launcher and the demo."""
