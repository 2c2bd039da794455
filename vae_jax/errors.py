"""The one exception type the entry points turn into a one-line message and a non-zero exit."""


class UserError(Exception):
  """Bad input or an impossible request; str(error) is a complete one-line explanation."""
