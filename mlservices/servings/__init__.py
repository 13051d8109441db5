"""The servings that ship with the project; ``registry.discover()`` imports each module here."""
