"""Everything that speaks Bluesky: callbacks, simulated beamline devices, steering plans, storage."""
