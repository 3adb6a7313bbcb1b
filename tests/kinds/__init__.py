"""Task types as the tests see them: a toy third kind registered only here (toy.py) and,
for every kind, tiny deliveries the whole flow can learn in seconds (deliveries.py)."""
