"""Teachers that know the task: an LLM (or any HF model) fine-tuned as a task classifier.

A store can carry no more than its teacher knows, and SmolLM2-135M behind a 20-step soft
prompt knows less than the fine-tuned student it should teach. ``retrikt train-teacher``
therefore tunes the teacher as its own step, and ``build-store --teacher FOLDER`` uses it.

* ``classifier`` - how a task's examples become classifier inputs and how the head's
  logits become the task's loss and label distribution (COPA and STS-B included);
  ``ClassifierTeacher`` serves any sequence-classification model as a teacher.
* ``tuning`` - ``TeacherConfig`` and ``train_teacher``: LoRA, full or soft-prompt tuning
  with the transformers ``Trainer`` (checkpoints, resume, early stopping on a held-out
  slice of the training split), written as a ``from_pretrained`` folder.
* ``loading`` - ``load_teacher(spec)``: a train-teacher folder, any HF sequence
  classifier (folder or hub id), or an LLM preset (the zero-shot ``LLMTeacher``).
"""
