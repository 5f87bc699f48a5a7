"""Training-side adapters shared by the trainers in ``nnunet_efficient/trainers``.

They live outside ``trainers/`` because nnU-Net imports every module of that folder by its bare
name while searching for a trainer; helpers there would be imported twice.
"""
