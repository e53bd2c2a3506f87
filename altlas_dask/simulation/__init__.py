"""Trace replay in virtual time: the scheduling core driven by a discrete-event model of a GPU cluster."""
