"""Google Cloud adapters: the Firestore operation store and the Pub/Sub task
queue. Both honour FIRESTORE_EMULATOR_HOST / PUBSUB_EMULATOR_HOST (the
client libraries then use the emulator with anonymous credentials)."""
