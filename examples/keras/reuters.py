"""Classifying newswires ("Deep Learning with Python", chapter 4), ported to fastnn by changing the
imports and the ``load_data`` line only (``keras_data`` stands in for ``keras.datasets``:
synthetic newswires, no download).
"""
import numpy as np

from fastnn import keras
from fastnn.keras import layers
from fastnn.keras.utils import to_categorical
from keras_data import reuters

(train_data, train_labels), (test_data, test_labels) = reuters.load_data(
    num_words=10000)


def vectorize_sequences(sequences, dimension=10000):
    results = np.zeros((len(sequences), dimension))
    for i, sequence in enumerate(sequences):
        for j in sequence:
            results[i, j] = 1.
    return results


x_train = vectorize_sequences(train_data)
x_test = vectorize_sequences(test_data)

y_train = to_categorical(train_labels)
y_test = to_categorical(test_labels)

model = keras.Sequential([
    layers.Dense(64, activation="relu"),
    layers.Dense(64, activation="relu"),
    layers.Dense(46, activation="softmax")
])

model.compile(optimizer="rmsprop",
              loss="categorical_crossentropy",
              metrics=["accuracy"])

x_val = x_train[:len(x_train) // 9]
partial_x_train = x_train[len(x_train) // 9:]
y_val = y_train[:len(y_train) // 9]
partial_y_train = y_train[len(y_train) // 9:]

history = model.fit(partial_x_train,
                    partial_y_train,
                    epochs=20,
                    batch_size=512,
                    validation_data=(x_val, y_val))

model = keras.Sequential([
    layers.Dense(64, activation="relu"),
    layers.Dense(64, activation="relu"),
    layers.Dense(46, activation="softmax")
])
model.compile(optimizer="rmsprop",
              loss="categorical_crossentropy",
              metrics=["accuracy"])
model.fit(x_train,
          y_train,
          epochs=9,
          batch_size=512)
results = model.evaluate(x_test, y_test)
print("results:", results)
predictions = model.predict(x_test)
print("prediction shape:", predictions[0].shape, "sum:", np.sum(predictions[0]),
      "class:", np.argmax(predictions[0]))
