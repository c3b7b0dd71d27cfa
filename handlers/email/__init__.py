"""Email: parsing (parse.py) and quoted-history splitting (quotes.py), pure functions."""
