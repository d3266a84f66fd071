"""decomp.latency: measured op times and (to come) the latency and communication model."""

from decomp.latency.profile import annotate_op_times, op_times, rescale_op_times

__all__ = ["annotate_op_times", "op_times", "rescale_op_times"]
