"""The GPU fleet: memory estimates, model shapes, GPU classes, pre-quantized bases and routing to queues."""
