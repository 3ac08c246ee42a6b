"""One router per API family: ``health``, ``v1`` (autoseg's own), and MONAI Label's ``info``, ``infer`` and
``datastore`` (with sessions)."""
