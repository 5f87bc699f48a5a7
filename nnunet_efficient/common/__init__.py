"""The ground floor: small pieces every layer of the plugin shares.

Nothing here imports another part of the plugin (``nnunet_efficient.errors`` excepted), and
nothing imports nnunetv2 when the module is imported, so the pure-PyTorch core may use these
modules as freely as the adapters and commands above it.

- :mod:`.messages`: one line out of an exception's message.
- :mod:`.files`: atomic file writes (the old file or the complete new one, never a partial one).
- :mod:`.cases`: case identifiers of nnU-Net's ``CASE_XXXX<ending>`` image files.
- :mod:`.modules`: the network behind a DistributedDataParallel / ``torch.compile`` wrapper.
- :mod:`.plugin_env`: the ``nnUNet_extTrainer`` value that lets nnU-Net find the plugin's trainers.
- :mod:`.arguments`: the checks of ``-step_size``, ``--batch_size`` and ``-part_id`` that
  ``predict``, ``benchmark`` and the predictor share.
"""
