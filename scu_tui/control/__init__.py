"""The S-SCU: pure numpy/pywt signals, a policy and a stateful controller (no MLX, no Textual).

``signals`` turns the last ``window`` steps into numbers (loss trend, gradient stability,
wavelet entropy, validation trend); ``policy`` maps those numbers and the current knobs to a
diagnosis and a bounded move; ``controller`` adds the safety memory (hysteresis, cooldowns,
back-off, effect checks) and the checkpointable state; ``proposals`` keeps every proposal's
record; ``steering`` takes a proposal from there to its outcome (the mode, expiry, answers,
applying it through the run's knobs, rollbacks). See ``controller`` for the flow.
"""
