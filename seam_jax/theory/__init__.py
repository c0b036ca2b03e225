"""Theorem 1 of SEAM, checked numerically (job "theory", ``configs/theory.py``).

- ``bound``: the reference at theta (exact grad L_sd by ``exact_hvp``, rho_a, rho_b from
  sampled third-derivative products, the leading Taylor term) and the eps sweep of the
  forward and central differences, as pure functions returning records.
- ``report``: regimes (truncation, round-off), slopes, floor and best eps; CSV, JSON, PNG.
- ``precision``: the arms (master dtype, compute dtype, ``seam.sd_precision``), and whether
  ``theta + eps d`` survives rounding (``perturbation_survival``, ``realised_perturbation``:
  ``cos(delta, eps d)``), with ``check_sd_precision``, the SEAM job's refusal of a finite
  difference that would be mostly rounding.
"""
