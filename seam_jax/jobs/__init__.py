"""Jobs of the command line: each ``run(config)`` turns a config into work and results."""
