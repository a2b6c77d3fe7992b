"""Neural-network helpers: data and training loops for the shipped examples."""
