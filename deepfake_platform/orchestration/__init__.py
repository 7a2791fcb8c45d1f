"""Orchestration: what runs the core on Ray and reports on it (the training launcher, sweeps, ensemble
builds, batch scoring, face extraction, fine-tuning, results reports). Nothing below this package imports it."""
