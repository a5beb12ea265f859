"""Whole pretrained vision-language models (LLaVA, Qwen2-VL families...): loading them with their own
processor and chat template (:mod:`.loading`), prompts through that chat template (:mod:`.chat`), and tiny
random-init members of the families for tests and the demo (:mod:`.tiny`)."""
