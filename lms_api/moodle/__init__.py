"""Moodle: its REST client (registered as a Pyramid service), bracket encoding, error mapping, function names."""
