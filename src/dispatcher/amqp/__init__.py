"""RabbitMQ side: queue topology, the task consumer bootstep and the response publisher."""
