"""SEAM's objective: losses, the three estimators of grad L_sd, and the combined gradient."""
