"""Classification edits (`MPNEditor`): fix a classifier's label for a text, in every training language."""
