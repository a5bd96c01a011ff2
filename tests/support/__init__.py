"""What tests share besides fixtures: plain modules, imported by name (a conftest holds fixtures and hooks alone)."""
